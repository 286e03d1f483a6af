"""The Keras twins of `tlearn-convnet mnist|v1` (same layers and order, Keras default
initialisers), and keras.applications.ResNet50 (random weights, 2 classes, BatchNorm frozen:
inference mode, γ/β fixed, as when fine-tuning), shared by keras_step.py, keras_agree.py and
keras_export_net.py."""
from tensorflow import keras
from tensorflow.keras import layers


def build(net):
    """(model, loss, classes, input shape) of `net` ("mnist", "v1" or "resnet50")."""
    if net == "resnet50":
        model = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3), classes=2)
        for layer in model.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.trainable = False
        return model, "categorical_crossentropy", 2, (224, 224, 3)
    if net == "mnist":
        model = keras.Sequential([
            keras.Input((28, 28, 1)),
            layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, activation="relu"), layers.Flatten(),
            layers.Dense(64, activation="relu"), layers.Dense(10, activation="softmax"),
        ])
        return model, "categorical_crossentropy", 10, (28, 28, 1)
    model = keras.Sequential([
        keras.Input((150, 150, 3)),
        layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(128, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(128, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Flatten(), layers.Dense(512, activation="relu"), layers.Dense(1, activation="sigmoid"),
    ])
    return model, "binary_crossentropy", 1, (150, 150, 3)
