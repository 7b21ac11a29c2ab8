"""Models: the course's ResNet family (and, later, CenterNet on its backbone)."""
