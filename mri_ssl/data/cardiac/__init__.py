"""Cardiac MR data: phantom demo studies, DICOM series reading and sequence labels, CMR studies with reports and
their video dataset."""
