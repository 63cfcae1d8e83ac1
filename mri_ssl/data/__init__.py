"""Datasets: one datalist resolver (user data or embedded demo data), splits, integrity checks, manifest scanners,
and the modality sub-packages brain, cardiac and photo."""
