"""Entry points run as ``python -m espnet_recipes.bin.<name>`` (ESPnet's ``espnet2.bin`` layout)."""
