"""Registration: trained models in, registered MLflow model versions out.

In: a model directory (`final/`) and the stage records and metrics beside it. Out: a registered version with
lineage tags, its metrics, a model card and the aliases `candidate` and, when it beats the current one behind the
promotion gate, `champion`.

- `registration`: register a model, the promotion gate and lock, rollback, load a registered model.
- `signatures`: what a registered model of each kind takes and gives, and its example input.
- `model_card`: the version's description and the Hub card written into the model directory.
- `pyfunc_model`: the pyfunc wrapper logged as code; it loads and serves without bertflow installed.
"""
