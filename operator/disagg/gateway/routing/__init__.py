"""The gateway's routing engine, shaped like the llm-d router: PURE (no I/O, no web types).

``contracts`` holds the only interfaces (Filter, Scorer, Picker, Profile); each plugin lives in its
own module and is built by type name from config through ``registry``; ``disagg`` is the profile
handler that decides between prefill+decode and decode-only.
"""
