"""HTTP services (Cloud Run / local): thin FastAPI shells over emprocess stages."""
