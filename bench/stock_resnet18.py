"""Model file for TorchServe's stock `image_classifier` handler: it needs exactly one class to
instantiate without arguments, then loads the state_dict into it."""
from torchvision.models.resnet import BasicBlock, ResNet

NUM_CLASSES = 6


class StockResNet18(ResNet):
    def __init__(self):
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=NUM_CLASSES)
