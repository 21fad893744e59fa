"""Training a derived network from scratch (``python -m rspnet.train``).

==================  ===========================================================
``config``          ``TrainConfig``: what a run computes; its checks
``run``             ``run(config, architecture, options)``: a whole run, as the CLI does it
``trainer``         ``Trainer``: the training step and checkpoint contents
``losses``          cross-entropy and OHEM
``schedule``        the poly learning rate
``validation``      single-scale validation during training
``checkpoint``      the trained-network checkpoint: format, loading, architecture check
``plots``           ``curves.png``
``__main__``        the command line: flags to a config, then ``run``
==================  ===========================================================
"""
from .checkpoint import TRAIN_FORMAT, check_architecture, checkpoint_series, load_model_weights, \
    load_train_checkpoint, load_trained_model
from .config import RESUMABLE_CHANGES, TrainConfig, check_config
from .losses import ohem_cross_entropy, segmentation_loss
from .run import run
from .schedule import poly_lambda
from .trainer import Trainer, build_datasets

__all__ = ["TrainConfig", "check_config", "RESUMABLE_CHANGES", "run", "Trainer", "build_datasets",
           "ohem_cross_entropy", "segmentation_loss", "poly_lambda", "TRAIN_FORMAT", "checkpoint_series",
           "load_train_checkpoint", "check_architecture", "load_model_weights", "load_trained_model"]
