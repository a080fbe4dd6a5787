// Package jobstate tells, from a batch/v1 Job's conditions, whether the Job
// is over and how it ended.
package jobstate

import (
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
)

// IsFinal reports whether c ends its Job: Complete or Failed, set to True.
// Only these two mean the Job is over: SuccessCriteriaMet and FailureTarget
// are announced while pods may still be terminating.
func IsFinal(c *batchv1.JobCondition) bool {
	return (c.Type == batchv1.JobComplete || c.Type == batchv1.JobFailed) && c.Status == corev1.ConditionTrue
}

// Final returns the Job's final condition (see IsFinal), or nil while the
// Job is not over.
func Final(job *batchv1.Job) *batchv1.JobCondition {
	for i := range job.Status.Conditions {
		if c := &job.Status.Conditions[i]; IsFinal(c) {
			return c
		}
	}
	return nil
}
