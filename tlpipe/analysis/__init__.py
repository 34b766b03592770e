"""What the `analyze` stage looks at after the first score: the costliest mistakes, where the model
looked (Grad-CAM), labels that look wrong and images that appear twice, found from the cached
features."""
