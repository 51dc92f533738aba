"""`vlpipe demo`: a synthetic captioned world served on 127.0.0.1, taken through fetch, cache, pretraining and a downstream task."""
