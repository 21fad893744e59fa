"""rspnet: memory-efficient NAS for light-weight semantic segmentation (RSPNet)."""
import sys

__version__ = "0.1.0"


def _interrupted_hook(previous):
    """``sys.excepthook`` of the command-line tools: Ctrl-C before a command
    handles it itself (while torch is imported, the first seconds) is one
    line, not an import traceback; the exit status stays SIGINT's."""
    def hook(kind, value, tb):
        if issubclass(kind, KeyboardInterrupt):
            print("interrupted (Ctrl-C)", file=sys.stderr)
        else:
            previous(kind, value, tb)
    return hook


# `python -m rspnet.<command>`: while the command's module is being located
# sys.argv[0] is "-m" (an `import rspnet` in a program or notebook leaves
# the hook alone)
if sys.argv[:1] == ["-m"]:
    sys.excepthook = _interrupted_hook(sys.excepthook)


def __getattr__(name: str):
    # rspnet.predict(model, image) without importing torch with the package:
    # the prediction module is loaded on first use (it is itself callable).
    if name == "predict":
        import importlib

        return importlib.import_module("rspnet.predict")
    raise AttributeError(f"module 'rspnet' has no attribute {name!r}")
