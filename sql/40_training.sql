-- Training curves and evaluation results of every run in this dataset.
CREATE OR REPLACE VIEW train_metrics AS
SELECT run_id, step, name, value FROM metrics WHERE split = 'train' ORDER BY run_id, step, name;

CREATE OR REPLACE VIEW eval_metrics AS
SELECT run_id, name, value FROM metrics WHERE split = 'eval' ORDER BY run_id, name;
