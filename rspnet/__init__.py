"""rspnet: memory-efficient NAS for light-weight semantic segmentation (RSPNet)."""
__version__ = "0.1.0"


def __getattr__(name: str):
    # rspnet.predict(model, image) without importing torch with the package:
    # the prediction module is loaded on first use (it is itself callable).
    if name == "predict":
        import importlib

        return importlib.import_module("rspnet.predict")
    raise AttributeError(f"module 'rspnet' has no attribute {name!r}")
