#!/usr/bin/env python3
"""A kinfer worker in Python, with the standard library only: the worker
contract in the language most models are written in.

kinfer_worker (next to this file) does the contract's part: it reads the
request from the environment kinfer sets (KINFER_REQUEST_ID, KINFER_MODEL,
KINFER_INPUT) and writes the result to the termination message file, exiting
0 on success, 42 for input that can never work (kinfer does not retry it) and
1 when inference fails, so that Kubernetes retries the pod up to the model's
maxRetries. In a pool (KINFER_WORK_URL set) the same program serves request
after request from the manager's work API.

This one counts the words of {"text": "..."}; put your model where count() is.
"""

import kinfer_worker


def count(text):
    return {"words": len(text.split()), "characters": len(text)}


def handle(req):
    payload = req.input
    if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
        raise kinfer_worker.BadInput('input must be {"text": "..."}')
    return count(payload["text"])


if __name__ == "__main__":
    kinfer_worker.run(handle)
