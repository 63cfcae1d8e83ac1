"""2-D photographs (fundus, chest X-ray): reading images and masks, their datalists, and the embedded demo set."""
