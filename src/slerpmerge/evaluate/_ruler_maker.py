"""Run one of RULER's item-maker scripts as RULER's own prepare.py runs it, with sentences split offline.

    python _ruler_maker.py SCRIPT [the script's arguments]      (SCRIPT: niah, qa, variable_tracking, ...)

Run as a file, in a process of its own (ruler.py starts it): the scripts read their arguments and seed the global
random generators when imported, and import `constants` and `tokenizer` as top-level modules. The needle tasks on
essays split sentences with NLTK's punkt model, which NLTK downloads at run time; nupunkt's pretrained English
model splits them here instead, without a download.
"""

import runpy
import sys
from pathlib import Path

import long_context_eval

if __name__ == "__main__":
    data = Path(long_context_eval.__file__).parent / "data"
    script = data / "synthetic" / f"{sys.argv[1]}.py"
    if sys.argv[1] == "niah":
        import nltk.tokenize
        import nupunkt

        nltk.tokenize.sent_tokenize = lambda text, language="english": nupunkt.sent_tokenize(text)
    sys.path[:0] = [str(script.parent), str(data)]
    sys.argv = [str(script), *sys.argv[2:]]
    runpy.run_path(str(script), run_name="__main__")
