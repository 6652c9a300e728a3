"""A handler that does nothing, served by the benchmark beside the models: what TorchServe itself costs
per request on this machine (HTTP, the frontend's queue, the trip to a Python worker and back), with
the same client. A model can be served no faster than this."""


def handle(data, context):
    if data is None:  # TorchServe's initialisation call
        return None
    return ["{}"] * len(data)
