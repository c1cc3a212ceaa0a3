"""``python -m spacesql.cli``."""

from spacesql.cli import main

main()
