"""The baseline: the TPOT book's iris API, written for the benchmark.

One Flask + Flask-RESTful app on the Flask development server (threaded, as
``app.run`` starts it), the model loaded once with joblib, and per request a
pandas DataFrame built from the JSON, then ``predict`` and ``predict_proba``
on it, as the book does. The book answers one instance; for the batch test
the same code takes ``{"instances": [...]}`` as a many-row DataFrame.

    python -m bench.book_app --model model.joblib --port 5000 [--classes a,b,c]
"""

from __future__ import annotations

import argparse
import warnings

import joblib
import pandas as pd
from flask import Flask, request
from flask_restful import Api, Resource

FEATURES = ["SepalLength", "SepalWidth", "PetalLength", "PetalWidth"]


def create_app(model_path: str) -> Flask:
    app = Flask(__name__)
    api = Api(app)
    model = joblib.load(model_path)
    # The pipeline was fitted on a plain array; scikit-learn warns on every
    # DataFrame call that it has column names. The book's model would not warn.
    warnings.filterwarnings("ignore", message="X has feature names")

    class Predict(Resource):
        def post(self):
            data = request.get_json()
            if "instances" in data:
                frame = pd.DataFrame(data["instances"])[FEATURES]
                predictions = model.predict(frame)
                probabilities = model.predict_proba(frame)
                return {
                    "predictions": [str(p) for p in predictions],
                    "probabilities": probabilities.tolist(),
                }
            frame = pd.DataFrame([data])[FEATURES]
            prediction = model.predict(frame)[0]
            probability = model.predict_proba(frame)[0].max()
            answer = {f"In_{name}": data[name] for name in FEATURES}
            answer["Prediction"] = str(prediction)
            answer["Probability"] = float(probability)
            return answer

    api.add_resource(Predict, "/predict")
    return app


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    create_app(args.model).run(host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
