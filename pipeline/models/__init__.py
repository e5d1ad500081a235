"""What data stages and training both use: the model factory and encoders (open_clip towers),
image decoding, and the English resources (spaCy, WordNet, langid). It imports nothing from
the stages or from training/; importing the package itself loads no model library."""
