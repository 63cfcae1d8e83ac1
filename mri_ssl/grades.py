"""The joint fundus grading label space (IDRiD): how many diabetic retinopathy and macular oedema grades there are.

A neutral low module, so that the datalists that validate grades (``mri_ssl.data.photo``), the joint grading loss
(``mri_ssl.losses.grading``) and its metrics (``mri_ssl.metrics.grading``) agree without importing each other.
"""

DR_GRADES = 5  # diabetic retinopathy grade 0-4
DME_GRADES = 3  # diabetic macular oedema risk 0-2
