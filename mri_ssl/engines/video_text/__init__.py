"""Training, evaluation and inference of the CMR video-text model (``mri_ssl.networks.video_text``), one job a module:

- ``model``: build the model from a seed, rebuild it from a checkpoint (``load_video_text_model``), embed a dataset;
- ``trainer``: ``VideoTextTrainer`` (CLIP loss, validation loss, history, distributed-safe) and its optimizer;
- ``evaluation``: ``VideoTextEvaluator`` (retrieval and linear-probe tables, trained vs untrained);
- ``report``: the evaluation's tables and embedding plot;
- ``inference``: ``VideoTextInference`` (rank candidate reports for each study).

Checkpoints come from ``mri_ssl.engines.AtomicCheckpointer`` like the other bundles (``latest.pt`` / ``best.pt`` /
``final.pt``, atomic, resumable with ``resume``), with ``checkpoint_extras`` (model config and tokenizer) added so
``load_video_text_model`` rebuilds the model from the file alone. The report tokenizer itself is
``mri_ssl.text.tokenizer_state``. The names below are what the bundle configs use.
"""

from mri_ssl.engines.video_text.evaluation import VideoTextEvaluator
from mri_ssl.engines.video_text.inference import VideoTextInference
from mri_ssl.engines.video_text.model import (build_video_text_model, checkpoint_extras, embed_dataset,
                                              load_video_text_model)
from mri_ssl.engines.video_text.trainer import VideoTextTrainer, batches_per_rank, video_text_optimizer

__all__ = ["VideoTextEvaluator", "VideoTextInference", "VideoTextTrainer", "batches_per_rank",
           "build_video_text_model", "checkpoint_extras", "embed_dataset", "load_video_text_model",
           "video_text_optimizer"]
