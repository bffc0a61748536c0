"""One CTranslate2 translator in a process of its own, serving ``decode_peers.py`` over a pipe.

A user runs one translator per process, and so does the benchmark: in torch's process,
CTranslate2's OpenMP calls bind to torch's ``libgomp``, and two translators in one process give
CTranslate2's own ``libgomp`` two thread teams; either way the runtime manages more threads
than there are cores, and its waiting threads then sleep at every parallel region instead of
spinning (see ``decode_peers.py``). This process imports nothing but CTranslate2.

    python benchmarks/ct2_server.py MODEL_DIR COMPUTE_TYPE THREADS

prints ``ready`` once the model is loaded, then answers each JSON line on stdin
(``{"source": [[token, ...], ...], "beams": k, "steps": n}``) with one JSON line: the best
hypothesis of every row, decoding exactly ``steps`` tokens.
"""

import json
import sys

import ctranslate2


def main() -> None:
    model_dir, compute_type, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    translator = ctranslate2.Translator(model_dir, compute_type=compute_type, intra_threads=threads)
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        results = translator.translate_batch(
            request["source"], beam_size=request["beams"],
            max_decoding_length=request["steps"], min_decoding_length=request["steps"],
        )
        print(json.dumps([r.hypotheses[0] for r in results]), flush=True)


if __name__ == "__main__":
    main()
