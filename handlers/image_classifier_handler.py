"""TorchServe handler for image_classifier: images in, top-k labels with probabilities out.

Accepts a raw body (`curl -T x.jpg`), a multipart field (`curl -F data=@x.jpg`) or JSON
{"data": "<base64>"} (also "image", or a data: URL). Any format PIL decodes: JPEG, PNG, WebP, GIF
(first frame), BMP, TIFF; grayscale, RGBA and palette images; EXIF orientation is honoured.
Each image is decoded and transformed on its own (decoding is inherently per image), then the batch
is stacked and runs as one forward pass.
"""
from handler_common import BatchClassifierHandler, HandlerSettings, ItemError, binary_content, setting
from model_defs.image import ImageDecodeError, ImageTooLargeError, eval_transform, load_image

ImageSettings = HandlerSettings.extend(
    "ImageSettings",
    # Decoded pixels (width x height), checked from the header before decoding, so a decompression
    # bomb costs nothing: a 40 MP photo decodes to 120 MB of RGB; anything bigger is refused (413).
    max_pixels=setting(40_000_000, minimum=1),
)


class ImageClassifierHandler(BatchClassifierHandler):
    modality = "image"
    settings_class = ImageSettings
    json_fields = ("data", "image")

    def load_modality(self, export):
        self.transform = eval_transform(export.spec["preprocess"])

    def prepare_payload(self, payload, index):
        content = binary_content(payload, self.json_fields, self.settings.max_bytes, "image")
        try:
            image = load_image(content, self.settings.max_pixels)
        except ImageTooLargeError as error:
            raise ItemError(413, "ImageTooLarge", str(error)) from None
        except ImageDecodeError as error:
            raise ItemError(400, "UndecodableImage", str(error)) from None
        return self.transform(image), {}

