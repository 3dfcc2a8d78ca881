"""ftray: fine-tuning on Ray. `ftray.load(RUN)` returns a finished run's predictor (`ftray.predict`)."""


def load(run: str, device: str = "cpu", generation=None, batch_size: int = 256):
    """The predictor of a finished run: `.predict(rows)` on a list of dicts, a DataFrame or a pyarrow
    Table (see `ftray.predict.Predictor`). Imported here lazily: `import ftray` stays light."""
    from ftray.predict import load as load_predictor
    return load_predictor(run, device, generation, batch_size)
