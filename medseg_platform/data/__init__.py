"""Datasets in the SSL4MIS/ACDC layout: reader, converters, phantom generator, splits, checks, augmentations."""
