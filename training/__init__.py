"""foil's training library: model factory, losses, data decoding, the training loop, evaluation.
Importable without Ray; `training.ray_train` is the thin Ray Train entry point."""
