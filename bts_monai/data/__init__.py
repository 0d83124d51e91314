"""Datasets: discovery (folder -> datalist), transforms, DataModule, synthetic sample, cache, download."""
