"""ESPnet glue of the VGS task: model wrappers, data types, preprocessor, scheduler, trainer, export."""
