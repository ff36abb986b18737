"""lm-evaluation-harness's scoring of `output_type: multiple_choice`, in plain Python (no torch,
no numpy), for the multiple-choice parity fixture (make_mc_fixture.py, check_mc.py).

Each function names the harness code it restates (lm_eval 0.4: api/task.py ConfigurableTask,
api/model.py TemplateLM, models/huggingface.py HFLM):

  construct_requests   one request (context, target_delimiter + choice) per choice, delimiter " "
  request_tokens       TemplateLM.loglikelihood: an empty context is [prefix_token_id] and the
                       continuation tok(continuation); else TemplateLM._encode_pair
  encode_pair          _encode_pair: the context's trailing whitespace (str.rstrip) moves to the
                       continuation; context_enc = tok(context), whole_enc = tok(context +
                       continuation), continuation_enc = whole_enc[len(context_enc):]
  model_input          HFLM._loglikelihood_tokens: (context_enc + continuation_enc)
                       [-(max_length + 1):][:-1], the continuation's log-probs at the last
                       len(continuation_enc) input positions (_select_cont_toks)
  process_results      acc = argmax(lls) == gold, acc_norm = argmax(lls / len(choice)) == gold,
                       len(choice) in characters of the choice without the delimiter; numpy's
                       argmax (first maximum, the first NaN wins) and division by zero (-inf, inf
                       or NaN)
"""
import math

TARGET_DELIMITER = " "


def construct_requests(context, choices):
    return [(context, TARGET_DELIMITER + choice) for choice in choices]


def encode_pair(tok_encode, context, continuation):
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole_enc = tok_encode(context + continuation)
    context_enc = tok_encode(context)
    continuation_enc = whole_enc[len(context_enc):]
    return context_enc, continuation_enc


def request_tokens(tok_encode, prefix_token_id, context, continuation):
    if context == "":
        return [prefix_token_id], tok_encode(continuation)
    return encode_pair(tok_encode, context, continuation)


def model_input(context_enc, continuation_enc, max_length):
    """The model's input ids and the input positions whose next-token log-probs are the
    continuation's (position i predicts continuation_enc[k] for the k-th of them)."""
    inp = (context_enc + continuation_enc)[-(max_length + 1):][:-1]
    inplen, contlen = len(inp), len(continuation_enc)
    return inp, list(range(inplen - contlen, inplen))


def _divide(x, n):
    if n != 0:
        return x / n
    if x == 0 or math.isnan(x):
        return math.nan
    return math.copysign(math.inf, x)


def _argmax(values):
    best = 0
    for i, v in enumerate(values):
        if math.isnan(v):
            return i
        if v > values[best]:
            best = i
    return best


def process_results(lls, choices, gold):
    completion_len = [float(len(c)) for c in choices]
    pred = _argmax(lls)
    pred_norm = _argmax([_divide(ll, n) for ll, n in zip(lls, completion_len)])
    return {"pred": pred, "pred_norm": pred_norm, "acc": 1.0 if pred == gold else 0.0,
            "acc_norm": 1.0 if pred_norm == gold else 0.0}


def mean(values):
    return sum(values) / len(values)
