"""The embedded demo's sample: the Noto emoji set fetched once with npm, served over local HTTP."""
