"""Brain MRI data: the embedded MNI152 phantom subjects (demo data) and their smooth random deformations."""
