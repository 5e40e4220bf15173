"""gpuprov: provision bare-metal GPU servers as local DeepSeek inference hosts with Ansible."""

__version__ = "0.1.0"
