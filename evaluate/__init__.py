"""`python -m evaluate`: FID / KID / mIoU of generated images (see `python -m evaluate --help`)."""
