"""Models: the course's ResNet family (and, later, CenterNet on its backbone)."""

# The preprocessing of torchvision's ImageNet weights (kept free of torch: the Snakefile reads it).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
