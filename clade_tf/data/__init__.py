"""Training and evaluation data: the sample sources, the deterministic stream over them,
and the prepared cache.

    source = make_source(data_config, generator_config, seed)        # clade_tf.data.sources
    ds = make_training_dataset(source, generator_config, 8, seed)    # tf.data batches, resumable

Modules, each the one owner of its concept:

- `sources`: every sample source (`SyntheticSource`, `ScenesSource`, `FolderSource`,
  `CacheSource`) and `make_source`, which picks one for a `DataConfig`;
- `pipeline`: the deterministic stream (`epoch_order`, `sample_rng`, `make_dataset`):
  a run's data position is its step count;
- `cache`: the prepared cache's format and `prepare`, which writes one;
- `folders`: the real dataset layouts and the official preprocessing (`BadSample`);
- `synthetic`, `scenes`: the procedural datasets; `icpe`: CLADE-ICPE's positional maps;
- `report`: messages printed once per process.

The names below load on first use (PEP 562), as in `clade_tf`: `clade_tf.data.scenes`
or `clade_tf.data.icpe` import without TensorFlow.
"""

from clade_tf.lazy import lazy_attributes

# public name -> the module that defines it
_EXPORTS = {
    "BadSample": "clade_tf.data.folders",
    "CacheError": "clade_tf.data.cache", "prepare": "clade_tf.data.cache",
    "epoch_order": "clade_tf.data.pipeline", "make_cache_dataset": "clade_tf.data.pipeline",
    "make_dataset": "clade_tf.data.pipeline", "sample_rng": "clade_tf.data.pipeline",
    "steps_per_epoch": "clade_tf.data.pipeline",
    "report_once": "clade_tf.data.report",
    "CacheSource": "clade_tf.data.sources", "FolderSource": "clade_tf.data.sources",
    "ScenesSource": "clade_tf.data.sources", "SyntheticSource": "clade_tf.data.sources",
    "first_samples": "clade_tf.data.sources", "fixed_batch": "clade_tf.data.sources",
    "make_source": "clade_tf.data.sources", "make_training_dataset": "clade_tf.data.sources",
}

__all__ = [
    "BadSample", "CacheError", "CacheSource", "FolderSource", "ScenesSource", "SyntheticSource",
    "epoch_order", "first_samples", "fixed_batch", "make_cache_dataset", "make_dataset", "make_source",
    "make_training_dataset", "prepare", "report_once", "sample_rng", "steps_per_epoch",
]


__getattr__, __dir__ = lazy_attributes(globals(), _EXPORTS)
