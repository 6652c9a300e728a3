"""TorchServe handler for image_classifier: images in, top-k labels with probabilities out.

Accepts a raw body (`curl -T x.jpg`), a multipart field (`curl -F data=@x.jpg`) or JSON
{"data": "<base64>"} (also "image", or a data: URL). Any format PIL decodes: JPEG, PNG, WebP, GIF
(first frame), BMP, TIFF; grayscale, RGBA and palette images; EXIF orientation is honoured.
Each image is decoded and transformed on its own (decoding is inherently per image), then the batch
is stacked and runs as one forward pass.

Explanations (/explanations/image_classifier) attribute the model's input pixels against a
mean-grey image (zeros after normalisation) and answer a coarse grid of attributions, summed over
the channels and over each cell, plus a PNG heat map over the image on request (`visualize=true`).
"""
import torch

from explanations import new_figure, png_base64, round_floats
from batch_handler import BatchClassifierHandler, HandlerSettings
from handler_settings import setting
from item_errors import ItemError
from request_payloads import binary_content
from model_defs.image import (ImageDecodeError, ImageTooLargeError, draft_min_side, eval_transform, load_image,
                              to_model_channel_order)

ImageSettings = HandlerSettings.extend(
    "ImageSettings",
    # Decoded pixels (width x height), checked from the header before decoding, so a decompression
    # bomb costs nothing: a 40 MP photo decodes to 120 MB of RGB; anything bigger is refused (413).
    max_pixels=setting(40_000_000, minimum=1),
    # Cells per side of an explanation's attribution grid (14: 16-pixel cells on a 224 input). A
    # grid, not every pixel: TorchServe's stock answer of ~150k floats hits response-size limits.
    explain_grid=setting(14, minimum=1),
)


def cell_shares(cells: int, pixels: int, device: torch.device) -> torch.Tensor:
    """[cells, pixels]: the share of each pixel (a unit interval) that falls in each of `cells` equal
    cells along one side; every pixel's shares add up to 1."""
    edges = torch.arange(cells + 1, dtype=torch.float64, device=device) * (pixels / cells)
    starts = torch.arange(pixels, dtype=torch.float64, device=device)
    overlap = torch.minimum(edges[1:, None], starts[None] + 1) - torch.maximum(edges[:-1, None], starts[None])
    return overlap.clamp(min=0)


class ImageClassifierHandler(BatchClassifierHandler):
    modality = "image"
    settings_class = ImageSettings
    json_fields = ("data", "image")
    decode_in_threads = True  # PIL decodes and resizes with the GIL released

    def load_modality(self, export):
        self.transform = eval_transform(export.spec["preprocess"])
        # JPEGs decode no larger than the resize needs (draft mode), as in training's held-out evaluation.
        self.decode_min_side = draft_min_side(export.spec["preprocess"])

    def item_from_content(self, content, index):
        encoded = binary_content(content, self.json_fields, self.settings.max_bytes, "image")
        try:
            image = load_image(encoded, self.settings.max_pixels, min_side=self.decode_min_side)
        except ImageTooLargeError as error:
            raise ItemError(413, "ImageTooLarge", str(error)) from None
        except ImageDecodeError as error:
            raise ItemError(400, "UndecodableImage", str(error)) from None
        return self.transform(image), {}

    def explanation_fields(self, attributions, source, batch, position, options):
        pixels = attributions[0].sum(dim=0)  # [H, W], summed over the channels
        height, width = pixels.shape
        rows, columns = min(self.settings.explain_grid, height), min(self.settings.explain_grid, width)
        # Each cell holds the sum of the attributions it covers, a pixel cut by a cell border shared by
        # area, so the grid adds up to the pixels' total (f(input) - f(baseline), up to the delta) even
        # where the cells do not divide the image (14 over the demo's 32 pixels).
        grid = (cell_shares(rows, height, pixels.device) @ pixels.double()
                @ cell_shares(columns, width, pixels.device).T)
        fields = {
            "attributions": round_floats(grid),
            "grid": {"rows": rows, "columns": columns, "input_size": [height, width],
                     "cell_pixels": [round(height / rows, 3), round(width / columns, 3)]},
        }
        if options.visualize:
            fields["heatmap_png"] = self.heatmap_png(attributions[0], source.inputs[0])
        return fields

    def heatmap_png(self, attributions: torch.Tensor, normalized_image: torch.Tensor) -> str:
        """The positive and negative attributions blended over the image the model saw, as base64 PNG."""
        from captum.attr import visualization

        params = self.spec["preprocess"]
        mean = torch.tensor(params["mean"], device=normalized_image.device)[:, None, None]
        std = torch.tensor(params["std"], device=normalized_image.device)[:, None, None]
        # Shown in RGB whatever the model's channel order, the attributions' channels alike.
        image = to_model_channel_order(params, (normalized_image * std + mean).clamp(0, 1)).permute(1, 2, 0).cpu().numpy()
        attributions = to_model_channel_order(params, attributions)
        figure = new_figure(4, 4)
        visualization.visualize_image_attr(
            attributions.permute(1, 2, 0).cpu().numpy(), image, method="blended_heat_map", sign="all",
            plt_fig_axis=(figure, figure.subplots()), show_colorbar=True, use_pyplot=False,
            title="attributions (green: for the target, red: against)",
        )
        return png_base64(figure)
