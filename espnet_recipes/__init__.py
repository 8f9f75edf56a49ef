"""ESPnet2 glue for s3prl-vgs: task, model wrapper, data types and recipe template."""
