"""mri_ssl: self-supervised representation learning on MRI, built on MONAI."""

__version__ = "0.1.0"
