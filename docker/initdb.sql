-- databases beside Airflow's: the fact ledger and MLflow's backend store
CREATE DATABASE freshen;
CREATE DATABASE mlflow;
