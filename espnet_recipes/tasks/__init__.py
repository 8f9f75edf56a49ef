"""ESPnet2 tasks of s3prl-vgs."""
