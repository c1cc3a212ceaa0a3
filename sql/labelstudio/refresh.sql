-- Bring the flat views of a Label Studio tasks table up to date (scheduled job):
--   spacesql run CATALOG sql/labelstudio/refresh.sql --var table=tasks
REFRESH MATERIALIZED VIEW {{ table }}_annotations;
REFRESH MATERIALIZED VIEW {{ table }}_regions;
