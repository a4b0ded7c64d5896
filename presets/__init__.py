"""The model catalog and the GPU SKU table, with a typed loader and memory estimates."""
