"""The images: known datasets and folders, the index of readable images, the split lists."""
