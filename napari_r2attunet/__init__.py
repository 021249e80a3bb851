"""napari plugin of the R2AttU-Net microscopy bundle: a dock widget that runs a preset of the bundle (nuclei, em2d,
em3d, em2d_mito) on an image layer and adds the mask and the objects as Labels layers, and the bundle's sample images
as sample data. The segmentation is the bundle's own inference config (:func:`napari_r2attunet.segment.segment`)."""

__all__ = ["segment", "widget", "sample_data"]
