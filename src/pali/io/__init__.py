"""Files on disk, each format read and written in one place.

``safetensors`` (the codec), ``layout`` (``config.json``, the shard index and which files make a
checkpoint), ``atomic`` (folder and file replacement), ``guards`` (bounds on what a checkpoint
claims), ``loading`` (a folder <-> a model's state). Model code never imports this package;
conversion and the Hub feed foreign files through the same readers and writer.
"""

from .atomic import atomic_directory, atomic_file, atomic_files, current_umask
from .guards import (
    MAX_DIM,
    MAX_PARAMETERS,
    MAX_TENSOR_BYTES,
    check_num_parameters,
    check_shape,
    checked_file,
    read_json,
)
from .layout import (
    CONFIG_NAME,
    INDEX_NAME,
    SINGLE_NAME,
    index_shards,
    layout_files,
    read_config,
    read_config_json,
    replaceable_save,
    shard_files,
    write_config_json,
    write_index,
)
from .safetensors import (
    SAFETENSORS_DTYPES,
    StoredTensor,
    list_tensors,
    parse_size,
    read_safetensors_file,
    write_safetensors,
)

__all__ = [
    "CONFIG_NAME", "INDEX_NAME", "MAX_DIM", "MAX_PARAMETERS", "MAX_TENSOR_BYTES", "SAFETENSORS_DTYPES", "SINGLE_NAME",
    "StoredTensor", "atomic_directory", "atomic_file", "atomic_files", "check_num_parameters", "check_shape", "checked_file",
    "current_umask", "index_shards", "layout_files", "list_tensors", "parse_size", "read_config", "read_config_json", "read_json",
    "read_safetensors_file", "replaceable_save", "shard_files", "write_config_json", "write_index", "write_safetensors",
]

from ..lazy import submodules_on_demand  # noqa: E402

__getattr__ = submodules_on_demand(__name__)  # pali.io.<module> after a bare ``import pali``
