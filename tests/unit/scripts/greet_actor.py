"""A ScriptActor: greets input["name"]; input["fail"] makes process() raise."""
from script_worker.actor import ScriptActor


class Greet(ScriptActor):
    required = ("name",)

    def process(self, data: dict) -> dict:
        if data.get("fail"):
            raise ValueError(f"cannot greet {data['name']}")
        if data.get("return_list"):
            return ["not", "a", "dict"]  # type: ignore[return-value]
        if data.get("return_nan"):
            return {"score": float("nan")}
        return {"greeting": f"hello {data['name']}", "has_database": self.database_url is not None}


if __name__ == "__main__":
    Greet.main()
