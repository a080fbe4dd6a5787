package localstack

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// Process is a component of the stack running as a child process, in a
// process group of its own so that Ctrl-C reaches the stack first and the
// stack stops its children in order.
type Process struct {
	Name, LogPath string

	cmd     *exec.Cmd
	done    chan error // receives Wait's result once, then holds it
	err     error
	stopped bool
}

func startProcess(name string, argv []string, logPath string, extraEnv []string) (*Process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = append(os.Environ(), extraEnv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &Process{Name: name, LogPath: logPath, cmd: cmd, done: make(chan error, 1)}
	go func() {
		p.done <- cmd.Wait()
		_ = logFile.Close()
	}()
	return p, nil
}

// Exited returns why the process ended, or nil while it runs.
func (p *Process) Exited() error {
	if p.err != nil {
		return p.err
	}
	select {
	case err := <-p.done:
		if err == nil {
			err = errors.New("exited")
		}
		p.err = err
	default:
	}
	return p.err
}

// Stop sends SIGTERM to the process group and SIGKILL after grace.
func (p *Process) Stop(grace time.Duration) {
	p.stopped = true
	if p.Exited() != nil {
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.err = exitErr(err)
	case <-time.After(grace):
		p.Kill()
	}
}

// Kill sends SIGKILL to the process group and waits for the process to end:
// no clean shutdown, no goodbye writes, as when a node dies.
func (p *Process) Kill() {
	p.stopped = true
	if p.Exited() != nil {
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	p.err = exitErr(<-p.done)
}

func exitErr(err error) error {
	if err == nil {
		return errors.New("exited")
	}
	return err
}

// Pid is the process's id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }
