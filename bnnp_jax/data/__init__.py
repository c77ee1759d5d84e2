"""Task data: the padded task batch (``tasks``), synthetic families, images,
precipitation, and the ``registry`` of samplers by family name."""
