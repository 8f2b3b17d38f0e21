// Aragora admin console (placeholder, replaced by the console work)
