"""Asks for more tokens than its budget, then spends the budget, then asks again."""
import json

import darwin_io

b = darwin_io.budget()
first = darwin_io.get_batch(1, b["tokens"] + 1)  # one row longer than the whole budget
got = 0
while (x := darwin_io.get_batch(8, 32)) is not None:
    got += x.shape[0] * (x.shape[1] - 1)
extra = darwin_io.get_batch(1, 1)
json.dump({"first_refused": first is None, "got": got, "extra_refused": extra is None},
          open("result.json", "w"))
